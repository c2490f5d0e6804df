"""The front ends: the command line, the HTTP service and its page, figures and reports.

* :mod:`.cli`: the ``lookalike`` command line (its parser), :mod:`.commands`: what each command does
* :mod:`.service`: the HTTP service (FastAPI) and the page at ``/``
* :mod:`.shared`: a collection many threads use at once (the service's)
* :mod:`.schemas`, :mod:`.security`: the service's schemas, access control and headers
* :mod:`.figures`, :mod:`.report`: Matplotlib figures and HTML reports
* :mod:`.demo`: the main job, end to end
"""
