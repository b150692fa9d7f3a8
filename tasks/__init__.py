"""Ray tasks and actors wrapping ``sharekan`` and ``storage`` calls (resources, retries); no maths."""
