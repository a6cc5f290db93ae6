"""What members exchange: peers' recordings and annotations, the publishing scan hand-off."""
