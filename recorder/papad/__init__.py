"""papad registration: clients for both papad API generations, auth, and a durable outbox.

`make_client(cfg.papad)` (in :mod:`recorder.papad.client`) builds the client the config asks for;
:class:`recorder.papad.outbox.Outbox` queues registrations in SQLite and
:class:`recorder.papad.outbox.OutboxWorker` delivers them, exactly once.
"""
