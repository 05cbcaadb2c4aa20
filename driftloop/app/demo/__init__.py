"""The customer-churn demo: its data generator, data registry and the names it uses.

These names configure the demo's blocks; the flows never see them. prefect.yaml spells the same
names in the demo's deployments (feature service, dataset and model resource ids), and
tests/test_deployments.py checks that the two agree.
"""

DEMO_DATASET = "churn"
DEMO_TABLE_PATH = "data/churn_labels.parquet"
DEMO_LABEL = "churned"
DEMO_ENTITY = "customer_id"
DEMO_TIMESTAMP = "event_timestamp"
DEMO_FEATURE_SERVICE = "churn_model_v1"
DEMO_MODEL_NAME = "churn-model"
DEMO_EXPERIMENT = "driftloop-churn"

# The demo's deployments in prefect.yaml that driftloop's own code refers to: `driftloop up`
# starts the first training through one, `driftloop add-batch` names the other's schedule.
DEMO_TRAINING_DEPLOYMENT = "train-churn-model"
DEMO_NEW_DATA_DEPLOYMENT = "detect-churn-data"
