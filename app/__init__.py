"""The Response Network: the system of record, served by ``uvicorn app.main:app``."""
