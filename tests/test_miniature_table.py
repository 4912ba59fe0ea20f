"""tools/miniature_table.py: the table of the paper's claims in miniature is computed from the runs'
metrics.json files (mean ± sample std over seeds) and written between its markers, prose kept."""
import json
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "tools"))

import miniature_table  # noqa: E402


def _write_metrics(path: Path, records) -> None:
    path.mkdir(parents=True)
    (path / "metrics.json").write_text("\n".join(json.dumps(r) for r in records) + "\n")


def test_table_averages_the_final_evaluations_over_seeds(tmp_path):
    row = next(r for r in miniature_table.ROWS if r.task == "semseg" and r.name == "clip_random")
    for seed, miou in ((0, 60.0), (1, 64.0)):
        # Training records, an earlier evaluation, then the final one: only the last evaluation counts.
        _write_metrics(miniature_table.run_dir(tmp_path, row, seed),
                       [{"iteration": 10, "total_loss": 1.0}, {"iteration": 50, "sem_seg/mIoU": 1.0},
                        {"iteration": 150, "sem_seg/mIoU": miou}])
    text = miniature_table.table(tmp_path, seeds=[0, 1, 2])
    semseg = text.split("**Semantic FPN")[1]
    assert f"| {row.label} | 62.0 ± 2.8 | 2 of 3 | 0: 60.0; 1: 64.0 |" in semseg
    # Rows without runs are listed with dashes, not left out.
    assert "| CLIP baseline, small-CLIP init | – | 0 of 3 | – |" in semseg
    assert "| CLIP baseline, random init | – | – | 0 of 3 | – |" in text.split("**Semantic FPN")[0]
    assert miniature_table.final_metrics(tmp_path / "none" / "metrics.json", "semseg") is None


def test_write_table_replaces_only_the_generated_part(tmp_path):
    doc = tmp_path / "MINIATURE.md"
    doc.write_text(f"# Title\n\nprose before\n\n{miniature_table.BEGIN}\nold\n{miniature_table.END}\n\nprose after\n")
    miniature_table.write_table("new table", doc)
    assert doc.read_text() == f"# Title\n\nprose before\n\n{miniature_table.BEGIN}\nnew table\n{miniature_table.END}\n\nprose after\n"
