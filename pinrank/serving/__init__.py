"""Host-side serving: launch and supervise tritonserver, model control,
health views, the nginx proxy. No torch and no export code here: serving
reads the repository through pinrank.repository."""
