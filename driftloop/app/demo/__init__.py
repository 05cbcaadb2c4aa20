"""The customer-churn demo: its data generator, data registry and the names it uses.

These names configure the demo's blocks and deployments; the flows never see them.
"""

DEMO_DATASET = "churn"
DEMO_TABLE_PATH = "data/churn_labels.parquet"
DEMO_LABEL = "churned"
DEMO_ENTITY = "customer_id"
DEMO_TIMESTAMP = "event_timestamp"
DEMO_FEATURE_SERVICE = "churn_model_v1"
DEMO_MODEL_NAME = "churn-model"
DEMO_EXPERIMENT = "driftloop-churn"
