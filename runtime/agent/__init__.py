"""The agent: supervises one runtime process per sandbox and serves it the HTTP Lambda Runtime API.

It pulls invocations from the gateway over the gRPC runtime interface (`session`), hands them to the runtime
through the Runtime API (`runtime_api`), enforces the deadline, captures logs and memory (`logs`, `limits`) and
reports START / END / REPORT lines (`reports`). `sandbox` ties these together; `main` is the process entry point.
"""
