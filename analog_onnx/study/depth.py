"""The nominal depth (weight layers) of the zoo's architectures: what the depth claim and the
midpoint-by-depth figure put on their axis. Its own module, so the spec and the verdicts both read
it without importing each other."""

DEPTH = {"mlp": 3, "lenet5": 5, "vgg11": 11, "vgg11_bn": 11, "resnet18": 18, "resnet20": 20, "mobilenetv2": 53,
         **{f"mlp{k}": k + 1 for k in range(1, 7)}}
