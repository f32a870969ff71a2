"""``POST /v1/predict``: answers for a batch of digit images, through the defense pipeline."""

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from modeltheft.service.deps import Client, Guarded, Inputs
from modeltheft.service.schemas import ErrorBody, PredictResponse

router = APIRouter()

ERRORS = {
    code: {"model": ErrorBody, "description": text}
    for code, text in {
        401: "missing or unknown API key",
        413: "body or batch too large",
        422: "malformed input; the message names the problem",
        403: "this API key was blocked by an extraction detector",
        429: "refused by the rate limit; see Retry-After and the RateLimit headers",
    }.items()
}


@router.post(
    "/v1/predict",
    response_model=PredictResponse,
    responses=ERRORS,
    summary="Predict digit labels (and probabilities, unless the defenses withhold them)",
)
def predict(client: Client, X: Inputs, guarded: Guarded) -> JSONResponse:
    """Answer each row in input order; every row counts as one query of the client."""
    reply = guarded.answer(client, X)
    labels, answers = reply.labels, reply.answers
    probabilities = answers.probabilities.tolist() if answers.expose_probabilities else None
    predictions = [
        {"label": int(label), "probabilities": probabilities[i] if probabilities else None}
        for i, label in enumerate(labels)
    ]
    return JSONResponse({"predictions": predictions}, headers=reply.headers)
