"""The kambda gateway: the Lambda Invoke API, the dispatcher that instances pull from, the scaler, the backends,
the gRPC runtime interface server and /metrics, composed in `app.create_app`."""
