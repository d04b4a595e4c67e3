"""The body of each entry point, one module per step: ``preprocess``, ``train``, ``evaluate``,
``predict``, ``compare`` and ``study`` (the ``main`` entry point). Each composes the library
(config -> data -> model -> engine -> tracking -> evaluation) inside the step's MLflow run.
"""
