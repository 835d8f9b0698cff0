-- wrk script: keep-alive POSTs with a 1 KiB body, like a device reporting telemetry.
wrk.method = "POST"
wrk.body = string.rep("x", 1024)
wrk.headers["Content-Type"] = "application/octet-stream"
