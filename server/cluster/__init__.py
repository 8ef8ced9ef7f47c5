"""Scale-out: API replicas and GPU workers on many machines, over Celery with a Redis broker.

Redis holds everything replicas share: the job queues (Celery's broker), task records with their
progress, result images, cancel requests, worker heartbeats and job leases. Nothing here runs on
a single-machine server.
"""
