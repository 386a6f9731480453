"""The replication study's report: a sweep directory -> `docs/<study>/README.md` and plots.

    python -m sftrl.study --sweep_dir=runs/quagmire --out=docs/quagmire_tiny \
        --sweep=configs/sweeps/quagmire_tiny.py [--allow_partial] \
        [--paper_numbers=docs/quagmire_paper_numbers.json]

Reads what `python -m sftrl.launch` left in the sweep directory:
  sweep.json                        per run: state, start and end times (the wall-clock time)
  <run>/config.json                 epochs, data variant, model size, RL steps
  <run>/pipeline.json               SFT steps of each variant (`<variant>/sft: final_step`)
  <run>/eval/*.json                 post-SFT and post-RL evals (`sftrl.eval.record`)
  <run>/samples/<ckpt>/<bench>.jsonl  the post-SFT samples, for the guessing control (optional)
  predict/report/predictor.json     the predictor's scores (Spearman, R², levels, proxies)
and writes into the output directory:
  README.md                         per-checkpoint table, the predictor table laid out like the
                                    paper's, the paper's own numbers (only from
                                    `--paper_numbers`, with its source; empty without it) and
                                    this study's ρ next to them, findings computed from the
                                    numbers (the paper's two settings recomputed on the
                                    matching subsets included), the wall-clock time, commands
  study.json                        every number the README shows: the checkpoints, the
                                    predictor's report and the findings as data; the README
                                    is rendered from it alone
  proxies_vs_rl*.png, passk_curves.png, rl_gain.png

The statistics are the predictor's (`sftrl.eval.predict`); this package only arranges them and
derives plain facts (orders, differences, a sampling standard error). Unfinished runs are
listed and refused; with `allow_partial` they are shown as missing and, when the predict run's
output does not match the finished runs, the predictor is re-run here over those runs.


Modules, one concept each:
  sweep.py      reading the sweep: run states, eval records, rows, the guessing control's
                samples, the setup; each checkpoint as a JSON-able record
  predictor.py  the predict run's report, checked against the eval files (or re-computed)
  findings.py   the findings as data (numbers and labels), from the records and the report
  paper.py      the paper's table (`--paper_numbers`) and this study's ρ next to it
  render.py     the README from the study's data (study.json) alone
  plots.py      the plots from the same data
  build.py      sweep -> data -> study.json, plots, README (`write_study`)
  cli.py        `python -m sftrl.study`
"""

from sftrl.study.build import study_data, write_study
from sftrl.study.cli import main
from sftrl.study.findings import spearman_margins, verdict
from sftrl.study.paper import PAPER_HEADLINE, PaperNumbers, load_paper_numbers
from sftrl.study.sweep import StudyError, collect, load_status

__all__ = ["PAPER_HEADLINE", "PaperNumbers", "StudyError", "collect", "load_paper_numbers",
           "load_status", "main", "spearman_margins", "study_data", "verdict", "write_study"]
