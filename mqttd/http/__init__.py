"""
The C{protocol = http} listener: the REST API (C{api.py}, its callers in C{auth.py} and
C{apikeys.py}), the dashboard's static files (C{dashboard/}), Prometheus' C{/metrics}
(C{metrics.py}) and the site joining them (C{site.py}).  Imported only when a listener is
configured so: a broker without one never loads C{twisted.web} or C{prometheus_client}.
"""
