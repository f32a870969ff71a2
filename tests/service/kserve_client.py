"""Drive a server with KServe 0.21's ``InferenceRESTClient`` (v1 and v2); print one JSON line.

Run by ``test_oip.py`` with the Python of a venv that has ``kserve`` (``KSERVE_PYTHON``):
kserve pins protobuf and psutil below the project's, so it cannot live in the project venv.
Usage: ``python kserve_client.py URL KEY MODEL ROWS_JSON``. Imports nothing of modeltheft.
"""

import asyncio
import json
import sys

import numpy as np
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig


async def main(url: str, key: str, model: str, rows: list[list[float]]) -> dict[str, object]:
    X = np.array(rows)
    found: dict[str, object] = {}
    v1 = InferenceRESTClient(RESTConfig(protocol="v1"))
    found["v1_live"] = await v1.is_server_live(url)
    found["v1_ready"] = await v1.is_model_ready(url, model)
    headers = {"Authorization": f"Bearer {key}"}
    answer = await v1.infer(url, {"instances": X.tolist()}, model_name=model, headers=headers)
    found["v1_predictions"] = answer["predictions"]
    await v1.close()
    v2 = InferenceRESTClient(RESTConfig(protocol="v2"))
    found["v2_live"] = await v2.is_server_live(url)
    found["v2_ready"] = await v2.is_model_ready(url, model)
    for datatype, dtype in (("FP32", np.float32), ("FP64", np.float64)):
        for binary in (False, True):
            given = InferInput(name="input-0", shape=list(X.shape), datatype=datatype)
            given.set_data_from_numpy(X.astype(dtype), binary_data=binary)
            request = InferRequest(model_name=model, infer_inputs=[given], request_id="k1")
            # A fresh dict each time: the client adds its binary header to the caller's dict.
            result = await v2.infer(url, request, model_name=model, headers=dict(headers))
            found[f"v2_{datatype}_{binary}"] = {
                o.name: o.as_numpy().ravel().tolist() for o in result.outputs
            }
    try:
        await v2.infer(url, request, model_name=model)
    except Exception as exc:  # httpx.HTTPStatusError
        found["v2_no_key"] = str(exc)
    await v2.close()
    return found


if __name__ == "__main__":
    url, key, model, rows = sys.argv[1:5]
    print(json.dumps(asyncio.run(main(url, key, model, json.loads(rows)))))
