import json

from sharekan.demo import main


def test_demo_end_to_end_writes_table(tmp_path, capsys):
    out = tmp_path / "demo.json"
    main(["--steps", "150", "--hidden", "32", "--json", str(out)])
    printed = capsys.readouterr().out
    data = json.loads(out.read_text())
    names = [r["variant"] for r in data["rows"]]
    assert names[:4] == ["dense fp32", "int8 PTQ", "pruned 10%", "pruned 50%"]
    assert "VQ K=256 fp16" in names and "VQ K=32 int8" in names
    rows = {r["variant"]: r for r in data["rows"]}
    assert rows["dense fp32"]["accuracy"] > 0.5  # 10 classes: chance is 0.1
    assert rows["dense fp32"]["compression"] == 1.0
    assert rows["VQ K=32 int8"]["compression"] > rows["VQ K=32 fp16"]["compression"] > 1.0
    for name in names:
        assert name in printed
