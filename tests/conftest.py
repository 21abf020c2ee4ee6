import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
