"""The stages `python -m sftrl.main --stage=<name>` runs, one module each, each a
`run(config, workdir, layout) -> dict` (the summary main prints):

  model     sftrl.stages.model     the foundation end to end on the configured model
  sft       sftrl.stages.sft       SFT (the loop: sftrl.train.sft)
  rl        sftrl.stages.rl        GRPO from an SFT checkpoint (the loop: sftrl.train.grpo)
  eval      sftrl.stages.eval      held-out loss and pass@k of a run's checkpoints
  predict   sftrl.stages.predict   the predictor over a group's eval records
  pipeline  sftrl.stages.pipeline  SFT -> eval -> GRPO -> eval -> predict -> report
  study     sftrl.stages.study     a sweep's study report (the analysis: sftrl.study)
"""
