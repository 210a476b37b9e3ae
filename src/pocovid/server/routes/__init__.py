"""The service's endpoints, one router per concern (create_app includes them in this order).

    pages.py          the web page at / and the offline API docs at /docs
    admin.py          health, the model's description, how results are shown (tag "service")
    analyses.py       upload a recording, poll its analysis, fetch its artifacts, delete it
    exams.py          a patient's recordings (BLUE points) as one exam: create, add, follow, report, delete
    schema.py         the JSON Schema of the analysis result (tag "analyses")
    contributions.py  contribute a labelled recording; the admin's review queue
    common.py         OpenAPI pieces the upload endpoints share
"""
