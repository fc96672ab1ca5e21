"""Study 6: the paper's own protocol at full scale (45,000 Fashion-MNIST images, top-5 on 2,250 every epoch)."""
