"""The pocovid web service: upload a recording, get the analysis; history; data contributions.

    pocovid serve [--host 127.0.0.1] [--port 8000] [--data-dir DIR] [--model default] [--workers N]

    from pocovid.server import ServerConfig, create_app
    app = create_app(ServerConfig(data_dir="srv"))          # a FastAPI app (uvicorn, TestClient)

Layout (docs/server.md):
    app.py            create_app: state on app.state, middleware, error handlers, lifespan, routers
    routes/           the endpoints, one router per concern: pages (/ and /docs), admin (health,
                      model), analyses, contributions
    deps.py           FastAPI dependencies: the shared state (get_db, ...) and require_admin
    headers.py        security headers (CSP per kind of page)
    guard.py          CSRF: state-changing requests need X-Requested-With, a token or JSON
    results.py        the analysis result as the server reads it: summary, declared artifacts, links
    schemas.py        pydantic models of every request / response
    uploads.py        multipart bodies read as a stream: size limit while reading, type sniffing
    storage.py        the data folder: SQLite file, uploads, artifacts, contributions (random ids)
    db.py             SQLite state (analyses, contributions), safe to share between threads
    jobs.py           the bounded worker pool: the model loaded once, jobs off the request path,
                      recovery of jobs cut off by a stop
    worker.py         the analysis child process (memory-capped; a bomb kills it, not the server)
    deid.py           DICOM de-identification (PS3.15 Basic Application Level Confidentiality Profile)
    contributions.py  the contribution form's fields and the export in the public dataset's layout
    static/           the web page (plain HTML/CSS/JS, no CDN, no build step)

The web parts need the `serve` extra (`pip install 'pocovid[serve]'`: fastapi, uvicorn,
python-multipart, fastapi-offline); `deid`, `storage`, `db` and `contributions` need only the core.
"""

from pocovid.server.config import ServerConfig

__all__ = ["ServerConfig", "create_app"]


def create_app(*args, **kwargs):
    """The FastAPI app (see `pocovid.server.app.create_app`)."""
    from pocovid.server.app import create_app as _create

    return _create(*args, **kwargs)
