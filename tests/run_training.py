"""Run the training flow in this process and print its result: `python -m tests.run_training
'<json kwargs>'`. Tests use it to run flows the way a worker does, in a fresh process."""

import json
import sys

from flows.training import train

if __name__ == "__main__":
    state = train(**json.loads(sys.argv[1]), return_state=True)
    if not state.is_completed():
        print(f"FAILED {state.message}", flush=True)
        sys.exit(1)
    print("RESULT " + state.result().model_dump_json(), flush=True)
