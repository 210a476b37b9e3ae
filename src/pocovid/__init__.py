"""pocovid: decision support for lung point-of-care ultrasound (COVID-19 / pneumonia / healthy)."""

__version__ = "0.1.0"
