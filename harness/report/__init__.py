"""Results people read: allure labels and evidence while tests run, and afterwards the one
self-contained HTML conformance report (`hstream-conformance report`)."""
