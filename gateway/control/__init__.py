"""Lambda's control-plane API: functions, versions, aliases, concurrency and tags, as boto3's service model shapes
them (`operations.py` the routes, `shapes.py` the translation to and from Function manifests, `api.py` the HTTP
edge). Where the functions live is a `store.FunctionStore`: files under the data directory on the local backend
(`gateway/deployments.py`), the Function and Alias custom resources on Kubernetes (`kubernetes.py`)."""
