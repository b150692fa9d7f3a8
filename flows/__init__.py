"""Pipeline compositions: each stage a call into sharekan (maths) and storage (bytes)."""
