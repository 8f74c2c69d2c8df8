"""``minitron report``: every number in the table is the one in its JSON file."""

from __future__ import annotations

import json
import re
from pathlib import Path

import matplotlib.image
import pytest

from minitron.commands.report import ReportConfig, run_report
from minitron.errors import MinitronError
from tests.test_cli import assert_user_error, minitron

PARENT = "smollm2-135m"
PARAMS, PRUNED_PARAMS = 134_515_008, 99_114_048  # 30 -> 20 layers of 3,540,096 each


def write(path: Path, record: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2))
    return path


def make_runs(root: Path) -> dict[str, Path]:
    """A demo-like run: prune 30 -> 20 layers, distill, eval all three, bench all three."""
    pruned, distilled = root / "pruned", root / "distilled"
    write(pruned / "prune.json", {
        "kind": "prune", "parent": PARENT, "params_before": PARAMS, "params_after": PRUNED_PARAMS,
        "layers_before": 30, "layers_after": 20, "kept_layers": [*range(10), *range(20, 30)],
        "dropped_layers": list(range(10, 20)),
        "perplexity_before": 21.734, "perplexity_after": 96.2,
        "recipe": {"parent": PARENT, "target_layers": 20}, "minitron_version": "0.1.0",
    })  # fmt: skip
    write(distilled / "distill.json", {
        "kind": "distill", "teacher": PARENT, "student": str(pruned), "output": str(distilled),
        "params": PRUNED_PARAMS, "layers": 20, "tokens_seen": 245_760, "steps": 60,
        "start": {"val_loss": 5.1, "val_ppl": 164.02, "val_kl": 1.93},
        "final": {"val_loss": 3.91, "val_ppl": 49.9, "val_kl": 0.71},
        "teacher_val": {"val_loss": 3.2, "val_ppl": 24.53},
        "history": [{"step": s, "tokens": 4096 * s, "train_loss": 2.0 / s, "lr": 1e-4}
                    for s in range(1, 61)],
        "val_history": [{"step": s, "tokens": 4096 * s, "val_loss": 5.1 - s / 50,
                         "val_ppl": 164.0 - s, "val_kl": 1.9 - s / 60} for s in (0, 30, 60)],
        "recipe": {}, "minitron_version": "0.1.0",
    })  # fmt: skip

    def scores(hs: float, wg: float, ppl: float, params: int, model: str) -> dict:
        return {
            "model": model, "params": params,
            "tasks": {
                "hellaswag": {"metric": "acc_norm", "value": hs, "stderr": 0.01, "num_fewshot": 10,
                              "samples": 100, "published": 73.2, "published_parent": 81.8},
                "winogrande": {"metric": "acc", "value": wg, "stderr": 0.02, "num_fewshot": 5,
                               "samples": 100, "published": 72.1, "published_parent": None},
                "wikitext": {"metric": "word_perplexity", "value": ppl * 1.37, "stderr": None,
                             "num_fewshot": 0, "samples": 10, "published": None,
                             "published_parent": None},
            },
            "perplexity": {"data": "stdlib", "value": ppl, "tokens": 4096},
        }  # fmt: skip

    write(root / "eval" / "results.json", {
        "kind": "eval", "preset": "minitron-4b", "limit": 100, "minitron_version": "0.1.0",
        "published": {"model": "nvidia/Llama-3.1-Minitron-4B-Depth-Base",
                      "parent": "meta-llama/Llama-3.1-8B", "source": "arXiv 2408.11796"},
        "models": [scores(0.4123, 0.5678, 21.9, PARAMS, PARENT),
                   scores(0.2871, 0.5012, 97.35, PRUNED_PARAMS, str(pruned)),
                   scores(0.3349, 0.5236, 50.77, PRUNED_PARAMS, str(distilled))],
    })  # fmt: skip

    def speed(model: str, params: int, layers: int, decode: float) -> dict:
        return {
            "model": model, "params": params, "layers": layers, "bf16_bytes": 2 * params,
            "kv_bytes_per_token": 768 * layers, "timing_skipped": None,
            "prefill_tokens_per_s": {"b1_t128": 40 * decode, "b8_t128": 90 * decode},
            "decode_tokens_per_s": {"b1_t128": decode, "b8_t128": 7.5 * decode},
            "speedup": {"b1_t128": decode / 12.25, "b8_t128": decode / 12.25},
        }  # fmt: skip

    write(root / "bench" / "bench.json", {
        "kind": "bench", "device": "cpu", "dtype": "float32", "minitron_version": "0.1.0",
        "models": [speed(PARENT, PARAMS, 30, 12.25), speed(str(pruned), PRUNED_PARAMS, 20, 17.8),
                   speed(str(distilled), PRUNED_PARAMS, 20, 17.55)],
    })  # fmt: skip
    return {"pruned": pruned, "distilled": distilled}


def parse_table(markdown: str) -> tuple[list[str], list[list[str]]]:
    """Header and body rows of the one markdown table in ``markdown``."""
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    split = [[cell.strip() for cell in line.strip("|").split(" | ")] for line in lines]
    assert set(lines[1]) <= set("|-:"), "second line must be the separator"
    return split[0], split[2:]


def value_at(data, key: str):
    """JSON pointer lookup written here independently of minitron.report."""
    for token in key.lstrip("/").split("/"):
        token = token.replace("~1", "/").replace("~0", "~")
        data = data[int(token)] if isinstance(data, list) else data[token]
    return data


def expected_scale(column: str, key: str) -> float:
    if key.endswith(("/published", "/published_parent")):
        return 1.0  # results.json stores published numbers in percent
    if column.endswith(" %"):
        return 100.0
    return {"bf16 GiB": 2.0**-30, "KV KiB/token": 1 / 1024}.get(column, 1.0)


def check_every_number(out: Path) -> int:
    header, body = parse_table((out / "report.md").read_text())
    record = json.loads((out / "report.json").read_text())
    assert header == record["columns"] and len(body) == len(record["rows"])
    checked = 0
    for cells, row in zip(body, record["rows"], strict=True):
        assert cells[0] == row["model"] and len(cells) == len(header)
        for column, text in zip(header[2:], cells[2:], strict=True):
            if text == "—":
                assert column not in row["cells"]
                continue
            source = row["cells"][column]
            assert source["scale"] == expected_scale(column, source["key"]), column
            data = json.loads(Path(source["file"]).read_text())
            stored = value_at(data, source["key"])
            text, _, error = text.partition(" ± ")
            if error:  # a score's standard error, from the same file
                assert float(error) == pytest.approx(
                    value_at(data, source["stderr_key"]) * source["scale"], abs=0.051
                )
            shown = float(text.replace(",", ""))
            decimals = len(text.partition(".")[2])
            assert abs(shown - stored * source["scale"]) <= 0.5 * 10**-decimals + 1e-9, (
                column, text, source,
            )  # fmt: skip
            if decimals == 0 and source["scale"] == 1.0:
                assert int(text.replace(",", "")) == stored
            checked += 1
    return checked


def test_report_of_a_demo_run(tmp_path):
    runs = make_runs(tmp_path / "runs")
    out = tmp_path / "report"
    result = minitron("report", tmp_path / "runs", "--output", out, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    # sizes 3 x 4, prune ppl 2, distill 3 + 1, eval 3 x 4, bench 3 x 6, published 2 + 1
    assert check_every_number(out) == 12 + 2 + 4 + 12 + 18 + 3
    record = json.loads((out / "report.json").read_text())
    rows = {row["model"] if row["role"] == "paper" else row["role"]: row for row in record["rows"]}
    roles = [r["role"] for r in record["rows"]]
    assert roles == ["parent", "pruned", "distilled", "paper", "paper"]
    assert [r["model"] for r in record["rows"]] == [
        PARENT, "runs/pruned", "runs/distilled",
        "paper: meta-llama/Llama-3.1-8B", "paper: nvidia/Llama-3.1-Minitron-4B-Depth-Base",
    ]  # fmt: skip
    assert rows["pruned"]["cells"]["params"] == {
        "text": "99,114,048", "value": PRUNED_PARAMS, "scale": 1.0,
        "file": str((runs["pruned"] / "prune.json").resolve()), "key": "/params_after",
    }  # fmt: skip
    cells = {role: {c: v["text"] for c, v in row["cells"].items()} for role, row in rows.items()}
    assert cells["parent"]["ppl (prune held-out)"] == "21.73"
    assert cells["parent"]["val ppl (distill)"] == "24.53"
    assert cells["pruned"]["val ppl (distill)"] == "164.02"
    assert cells["distilled"]["val ppl (distill)"] == "49.90"
    assert cells["distilled"]["hellaswag %"] == "33.5 ± 1.0"
    assert cells["pruned"]["winogrande %"] == "50.1 ± 2.0"
    assert rows["pruned"]["cells"]["winogrande %"]["stderr_key"] == (
        "/models/1/tasks/winogrande/stderr"
    )
    paper, paper_parent = (
        cells[f"paper: {name}"] for name in ("nvidia/Llama-3.1-Minitron-4B-Depth-Base",
                                            "meta-llama/Llama-3.1-8B")
    )  # fmt: skip
    assert paper == {"hellaswag %": "73.2", "winogrande %": "72.1"}
    assert paper_parent == {"hellaswag %": "81.8"}  # no published parent number for winogrande
    assert rows["paper: meta-llama/Llama-3.1-8B"]["cells"]["hellaswag %"]["key"] == (
        "/models/0/tasks/hellaswag/published_parent"
    )
    assert cells["pruned"]["wikitext (word_perplexity)"] == f"{97.35 * 1.37:.4f}"
    assert not [c for c in record["columns"] if "card" in c]  # published numbers are rows
    assert cells["distilled"]["speed-up b1_t128"] == "1.43"
    assert cells["parent"]["bf16 GiB"] == "0.251" and cells["pruned"]["KV KiB/token"] == "15.0"
    assert record["plots"] == [
        "accuracy_vs_params.png", "perplexity_vs_params.png", "speedup_vs_accuracy_kept.png",
        "loss_curves.png",
    ]  # fmt: skip
    for name in record["plots"]:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        image = matplotlib.image.imread(out / name)
        assert image.shape[0] > 100 and image.shape[1] > 100 and image.std() > 0
        assert f"]({name})" in (out / "report.md").read_text()
    assert "against its first model (the parent)" in (out / "report.md").read_text()
    assert "hellaswag %" in result.stdout and "99,114,048" in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report", "runs"]  # no temporaries


def test_partial_runs_leave_cells_empty(tmp_path):
    runs = make_runs(tmp_path / "runs")
    out = tmp_path / "report"
    record, _ = run_report(
        ReportConfig([str(runs["pruned"]), str(tmp_path / "runs/bench")], str(out))
    )
    assert check_every_number(out) > 0
    assert "hellaswag %" not in record["columns"] and "val ppl (distill)" not in record["columns"]
    # no scores, so no accuracy figure; prune's held-out perplexity and the speed-ups remain
    assert record["plots"] == ["perplexity_vs_params.png", "speedup_vs_accuracy_kept.png"]
    header, body = parse_table((out / "report.md").read_text())
    distilled = next(row for row in body if row[0].endswith("distilled"))
    assert distilled[header.index("ppl (prune held-out)")] == "—"
    assert distilled[header.index("params")] == f"{PRUNED_PARAMS:,}"  # from bench.json


def test_conflicting_numbers_keep_the_first_and_say_so(tmp_path):
    runs = make_runs(tmp_path / "runs")
    bench = json.loads((tmp_path / "runs/bench/bench.json").read_text())
    bench["models"][1]["params"] = 1
    write(tmp_path / "runs/bench/bench.json", bench)
    record, _ = run_report(ReportConfig([str(tmp_path / "runs")], str(tmp_path / "report")))
    (conflict,) = record["conflicts"]
    assert conflict["column"] == "params" and conflict["other"]["value"] == 1
    assert conflict["kept"]["file"] == str((runs["pruned"] / "prune.json").resolve())
    assert "conflict:" in (tmp_path / "report/report.md").read_text()


def test_run_folder_without_json_is_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    result = minitron("report", tmp_path / "empty", "--output", tmp_path / "out")
    assert_user_error(result, "no prune.json, distill.json, results.json or bench.json")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"kind": "bench", "models": [', "bench.json: not valid JSON (line 1"),
        ("[1, 2]", "bench.json: expected a JSON object, got list"),
        ('{"kind": "bench", "models": [{"params": 3}]}', "not a bench file written by minitron"),
    ],
)
def test_malformed_json(tmp_path, text, message):
    make_runs(tmp_path / "runs")
    (tmp_path / "runs/bench/bench.json").write_text(text)
    with pytest.raises(MinitronError, match=re.escape(message)):
        run_report(ReportConfig([str(tmp_path / "runs")], str(tmp_path / "out")))
    assert not (tmp_path / "out").exists()


def test_missing_run_folder_and_existing_output(tmp_path):
    with pytest.raises(MinitronError, match="run folder not found"):
        run_report(ReportConfig([str(tmp_path / "nope")], str(tmp_path / "out")))
    make_runs(tmp_path / "runs")
    (tmp_path / "out").mkdir()
    with pytest.raises(MinitronError, match="output folder exists"):
        run_report(ReportConfig([str(tmp_path / "runs")], str(tmp_path / "out")))
    with pytest.raises(MinitronError, match="would replace the input"):
        run_report(ReportConfig([str(tmp_path / "runs")], str(tmp_path / "runs")), overwrite=True)


def test_report_of_real_prune_and_bench_output(tmp_path, tiny_checkpoint, monkeypatch):
    """The files ``minitron prune`` and ``minitron bench`` really write, not hand-made ones."""
    from minitron.commands.bench import BenchConfig, run_bench
    from minitron.commands.prune import PruneConfig, run_prune
    from minitron.config import DataConfig

    monkeypatch.chdir(tmp_path)
    data = DataConfig(samples=2, heldout=2, seq_len=16, batch_size=2)
    pruned = tmp_path / "run" / "pruned"
    run_prune(PruneConfig(parent=str(tiny_checkpoint), drop_layers=[2, 3], data=data), pruned)
    bench = BenchConfig(
        models=[str(tiny_checkpoint), str(pruned)], batch_sizes=[1], prompt_len=4, gen_len=2,
        repeats=1, warmup=0, threads=1,
    )  # fmt: skip
    run_bench(bench, tmp_path / "run" / "bench")
    record, _ = run_report(ReportConfig(["run"], "report"))
    assert check_every_number(tmp_path / "report") == 2 * (4 + 1 + 3)
    parent, child = record["rows"]
    assert (parent["role"], child["role"]) == ("parent", "pruned")
    assert (parent["cells"]["layers"]["text"], child["cells"]["layers"]["text"]) == ("6", "4")
    assert child["cells"]["params"]["key"] == "/params_after"
    assert child["cells"]["speed-up b1_t4"]["file"].endswith("bench.json")


def demo_report(tmp_path):
    from minitron.report import build_report, find_run_files

    make_runs(tmp_path / "runs")
    report = build_report(find_run_files(tmp_path / "runs"))
    results = json.loads((tmp_path / "runs/eval/results.json").read_text())
    distill = json.loads((tmp_path / "runs/distilled/distill.json").read_text())
    return report, results, distill


def drawn(ax) -> dict[str, dict]:
    """What each error bar of ``ax`` draws, by its label: point, bars, marker, position."""
    from matplotlib.container import ErrorbarContainer

    found = {}
    for container in ax.containers:
        assert isinstance(container, ErrorbarContainer)
        line, _, bars = container.lines
        ((x, y),) = line.get_xydata()
        spans = [segment for collection in bars for segment in collection.get_segments()]
        found[container.get_label()] = {
            "x": x, "y": y, "marker": line.get_marker(), "linestyle": line.get_linestyle(),
            "screen_x": line.get_transform().transform((x, y))[0],
            "yerr": [abs(b[1][1] - b[0][1]) / 2 for b in spans if b[0][0] == b[1][0]],
            "xerr": [abs(b[1][0] - b[0][0]) / 2 for b in spans if b[0][1] == b[1][1]],
        }  # fmt: skip
    return found


def test_accuracy_plot_draws_every_score_with_its_stderr_and_a_marker_per_role(tmp_path):
    from minitron.report import model_identity
    from minitron.report_plots import draw_accuracy_vs_params

    report, results, _ = demo_report(tmp_path)
    ax = draw_accuracy_vs_params(report).axes[0]
    points, left = drawn(ax), dict(drawn(ax))
    rows = [report.rows[model_identity(entry["model"])] for entry in results["models"]]
    assert [row.role for row in rows] == ["parent", "pruned", "distilled"]
    for row, entry in zip(rows, results["models"], strict=True):
        for task in ("hellaswag", "winogrande"):
            point = left.pop(f"{task} | {row.label}")
            score = entry["tasks"][task]
            assert point["x"] == entry["params"]
            assert point["y"] == pytest.approx(100 * score["value"])
            assert point["yerr"] == [pytest.approx(100 * score["stderr"])]
            assert point["linestyle"] == "None"
    assert not left  # the word-perplexity task and the paper rows are not drawn
    marker = {row.role: points[f"hellaswag | {row.label}"]["marker"] for row in rows}
    assert len(set(marker.values())) == 3, marker
    assert {points[f"winogrande | {row.label}"]["marker"] for row in rows} == set(marker.values())
    # pruned and distilled: one parameter count, two places on the page
    pruned, distilled = (points[f"hellaswag | {row.label}"] for row in rows[1:])
    assert pruned["x"] == distilled["x"] and pruned["screen_x"] != distilled["screen_x"]
    assert all(len(line.get_xydata()) == 1 for line in ax.get_lines())  # no line joins models
    legends = [
        [t.get_text() for t in legend.get_texts()] for legend in (ax.artists[0], ax.get_legend())
    ]
    assert legends == [
        ["parent: smollm2-135m", "pruned: pruned", "distilled: distilled"],
        ["hellaswag", "winogrande"],
    ]


def test_perplexity_is_plotted_and_speedup_has_errors_and_perplexity(tmp_path):
    from minitron.report_plots import draw_perplexity_vs_params, draw_speedup

    report, results, distill = demo_report(tmp_path)
    points = drawn(draw_perplexity_vs_params(report).axes[0])
    held_out = {k.partition(" | ")[2]: v["y"] for k, v in points.items()
                if k.startswith("val ppl (distill) | ")}  # fmt: skip
    assert sorted(held_out.values()) == sorted(
        [
            distill["teacher_val"]["val_ppl"],
            distill["start"]["val_ppl"],
            distill["final"]["val_ppl"],
        ]
    )
    eval_ppl = sorted(v["y"] for k, v in points.items() if k.startswith("ppl (stdlib) | "))
    assert eval_ppl == sorted(m["perplexity"]["value"] for m in results["models"])

    kept_ax, ppl_ax = draw_speedup(report).axes
    kept = drawn(kept_ax)
    parent = results["models"][0]["tasks"]
    pruned = results["models"][1]["tasks"]
    # first-order error of the mean ratio, written out for the two tasks
    ratios = [pruned[t]["value"] / parent[t]["value"] for t in ("hellaswag", "winogrande")]
    variance = sum(
        (pruned[t]["stderr"] / parent[t]["value"]) ** 2
        + (pruned[t]["value"] * parent[t]["stderr"] / parent[t]["value"] ** 2) ** 2
        for t in ("hellaswag", "winogrande")
    )
    point = next(v for k, v in kept.items() if k.endswith("runs/pruned"))
    assert point["x"] == pytest.approx(100 * sum(ratios) / 2)
    assert point["xerr"] == [pytest.approx(100 * variance**0.5 / 2)]
    assert len({v["marker"] for v in kept.values()}) == 3
    ppl = drawn(ppl_ax)
    assert sorted(v["x"] for v in ppl.values()) == sorted(held_out.values())
    assert "val ppl (distill)" in ppl_ax.get_xlabel()
