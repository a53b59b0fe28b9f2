"""``python -m keyrelay.testing.mock_upstream``: serve the mock upstream until SIGINT/SIGTERM."""

from keyrelay.testing.mock_upstream.server import main

main()
