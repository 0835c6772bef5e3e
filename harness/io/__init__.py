"""HStream IO side: run Airbyte connectors, validate their messages, accept or reject them.

- ``protocol``: the Airbyte message schema and line validation
- ``install``: connectors as local executables, each in its own cached venv
- ``runner``: one connector process per protocol command, with limits and evidence
- ``connectors``: the connector definitions under ``fixtures/connectors/``
- ``acceptance``: the acceptance checks (spec, check, discover, read, incremental, write)
- ``pipeline``: a source piped into a destination, accounted key by key
"""
