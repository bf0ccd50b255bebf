"""Monitoring: drift jobs (Evidently), their Prometheus exporter and the Alertmanager-driven retrain trigger."""
