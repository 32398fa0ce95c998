"""The gateway's data plane: one OpenAI-compatible endpoint in front of many InferenceServices.

Keys, quotas, the audit line and holding requests while a service scales from zero live here;
what to expose comes from the InferenceGateway the operator rendered it from (config.py), where
to send a request from the cluster's own objects (discovery.py).
"""
