"""Every MLflow call of the project, in parts a reader can name:

- ``tags``: the names of the tags the project sets on runs;
- ``runs``: where runs go (tracking URI, experiment), a step's run, its params and config;
- ``sink``: a run's metrics, with an explicit step per epoch, kept through a server outage;
- ``artifacts``: files, figures, arrays and the input dataset of a run, and reading them back;
- ``registry``: logging the served model, loading it back, and the model registry;
- ``readback``: finished train runs as plain ``records.TrainRunRecord``s for ``compare``;
- ``resume``: finding the interrupted run a resume continues.

The loops never import this package; the steps pass its functions in as callbacks. Under torchrun
only rank 0 talks to MLflow: other ranks get a sink that does nothing and open no run.
"""
