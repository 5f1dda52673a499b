"""Running the course: every notebook into outputs/, and the notebooks' Colab setup cell."""
