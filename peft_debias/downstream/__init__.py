"""PEFTDebias downstream: fine-tune a task model with frozen debiasing adapters and measure downstream fairness.

* :mod:`~peft_debias.downstream.config`: :class:`DownstreamConfig`, the documented options of a run;
* :mod:`~peft_debias.downstream.tasks`: the task registry (``winobias``, ``csv``): training and test rows and the
  metrics of each task;
* :mod:`~peft_debias.downstream.run`: :func:`run_downstream`, the fine-tuning loop (plain Python or
  ``accelerate launch``), the metrics and the saved model.
"""
