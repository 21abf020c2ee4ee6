from setuptools import find_packages, setup

setup(
    name="keras-clip-dalle",
    version="0.1.0",
    description="CLIP and DALL-E for Keras 3 / TensorFlow: train, export to TF Serving and TFLite.",
    packages=find_packages(include=["keras_clip*", "keras_dalle*", "export*"]),
    package_data={"keras_clip": ["text/assets/*", "zero_shot_assets/*"]},
    include_package_data=True,
    python_requires=">=3.10",
    install_requires=[
        "tensorflow==2.21.*",
        "tensorflow-text==2.21.*",
        "keras>=3.15,<4",
        "tensorboard",
        "numpy",
        "ftfy",
        "regex",
        "safetensors",
        "pillow>=13",  # preprocessing matches Pillow 13's resize (pass order)
    ],
    extras_require={
        "dev": ["pytest", "pytest-timeout", "scikit-image", "tensorflow-serving-api==2.21.*", "grpcio",
                "ai-edge-litert", "scikit-learn", "matplotlib", "tqdm", "pyarrow", "selenium",
                "faiss-cpu"],
        "serving": ["tensorflow-serving-api==2.21.*", "grpcio"],
        "lite": ["ai-edge-litert", "scikit-image"],  # export.tflite checks parity on its photos
        "hub": ["keras-hub"],  # only the live parity tests: the preset reader needs h5py alone
        # keras_clip.evaluate: the linear probe, figures, progress bars
        "eval": ["scikit-learn", "matplotlib", "tqdm"],
        "browser": ["selenium"],
        "search": ["pyarrow>=14", "tqdm"],  # keras_clip.embed and ImageIndex.load
        "ann": ["faiss-cpu>=1.8"],  # ImageIndex.build_ann
        # Apache Beam (keras_clip.beam) cannot be an extra here: apache-beam 2.77 pins pillow<13,
        # protobuf<7 and pyarrow<26; `make test-beam` builds its own venv (see the Makefile).  # the search page's browser test (with Debian's chromium)
    },
)
