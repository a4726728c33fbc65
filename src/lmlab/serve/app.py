"""``lmlab serve``: one local page over a ModelSet (FastAPI; the page is static HTML + JavaScript).

Routes: ``/`` the page; ``/api/models``; ``/api/sample`` (one prompt, every chosen model); ``/api/score`` (one
model's surprisal of a text or corpus; the page asks model by model and shows its progress); ``/report`` the
study's report.html when there is one. An lmlab error is a 400 with its one-line message; anything else a 500
with one line, never a stack trace on the page.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from pydantic import BaseModel, Field

from lmlab.errors import LmlabError
from lmlab.generation import SamplingSettings
from lmlab.serve.models import CORPORA, ModelSet
from lmlab.surprisal import MAX_WORDS


class SampleRequest(BaseModel):
    models: list[str]
    prompt: str = ""
    strategy: str = "greedy"
    temperature: float = 1.0
    top_k: int = 40  # lmlab sample's defaults
    top_p: float = 0.9
    repetition_penalty: float = 1.0
    max_tokens: int = Field(30, ge=1, le=400)
    seed: int = 0
    ban_unk: bool = False


class ScoreRequest(BaseModel):
    model: str
    text: str | None = None
    corpus: str | None = None
    max_words: int = Field(MAX_WORDS, ge=1, le=20_000)


def create_app(models: ModelSet, study: Path | None = None) -> FastAPI:
    app = FastAPI(title="lmlab serve", docs_url=None, redoc_url=None)
    page = (resources.files("lmlab.serve") / "page.html").read_text(encoding="utf-8")
    report = study / "report.html" if study and (study / "report.html").is_file() else None

    @app.exception_handler(LmlabError)
    async def lmlab_error(request: Request, exc: LmlabError):
        return JSONResponse({"error": str(exc)}, status_code=400)

    @app.exception_handler(Exception)
    async def other_error(request: Request, exc: Exception):
        return JSONResponse({"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"},
                            status_code=500)

    @app.get("/", response_class=HTMLResponse)
    def index():
        return page

    @app.get("/api/models")
    def list_models():
        return {"models": models.describe(), "corpora": list(CORPORA), "max_words": MAX_WORDS,
                "report": report is not None}

    @app.post("/api/sample")
    def sample(req: SampleRequest):
        try:
            settings = SamplingSettings(req.strategy, req.temperature, req.top_k, req.top_p,
                                        req.repetition_penalty, req.max_tokens)
        except ValueError as e:
            raise LmlabError(str(e)) from e
        return {"samples": models.sample(req.models, req.prompt, settings, req.seed, req.ban_unk)}

    @app.post("/api/score")
    def score(req: ScoreRequest):
        if not req.text and not req.corpus:
            raise LmlabError("nothing to score: paste a text, upload a file or pick a corpus")
        return models.score(req.model, req.text, req.corpus, req.max_words)

    @app.get("/report")
    def study_report():
        if report is None:
            return HTMLResponse("<p>No study report: start lmlab serve with --study DIR of a finished "
                                "<code>lmlab run</code>.</p>", status_code=404)
        return FileResponse(report)

    return app
