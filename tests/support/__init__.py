"""What the tests share and never test themselves: the server subprocess, the model zoo, metrics
scraping, channel options and the in-process reference."""
