"""The served graders as MLflow models-from-code: each script here names the model object that
``mlflow.pyfunc.log_model(python_model=<script>)`` saves as code, not as a pickle."""
