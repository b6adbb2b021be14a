"""Evaluation metrics (FID/KID, SSIM, LPIPS, PSNR) used by ``train/evaluate.py``."""
