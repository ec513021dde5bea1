"""Training through the encoders: LoRA adapters (`lora`), the image-side training engine (`engine`), resumable
checkpoints (`checkpoint`)."""
