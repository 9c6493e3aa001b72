"""The local HTTP service: FastAPI app, job queue, uploads, model downloads and the ``serve`` entry.

Layout: :mod:`.config` (settings), :mod:`.schemas` (the wire format), :mod:`.images` (uploads on
disk), :mod:`.jobs` (queue, worker, watchdog, persistence), :mod:`.downloads` (model downloads),
:mod:`.app` (routes), :mod:`.server` (binding, token, logging). Clients use :mod:`backend.client`.
"""
