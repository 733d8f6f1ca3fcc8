"""Losses, metrics (PSNR, SSIM, LPIPS, accuracy, mIoU), EMA and schedules."""
