"""Export for TensorFlow Serving (`serving.py`) and a client for a running server
(`client.py`)."""
