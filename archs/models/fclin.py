"""The improved fully-connected network of Lin, Memisevic & Konda, "How far can we go without
convolution: Improving fully-connected networks" (ICLR 2016 workshop, arXiv 1511.02580).

What the paper and its Theano code (github.com/hantek/zlinnet, `expr_cifar10_ZLIN_normhid_nolinb_
dropout.py` and the `preprocess` module it uses) specify, and what this version does:

- Input. Specified: each image standardised on its own (minus its mean, divided by its standard
  deviation + 1e-10), then PCA-whitened to 800 components fitted on the training split (the
  covariance divided by N; components of non-positive variance dropped). Here: the same, carried
  inside the model as buffers (`pca_mean`, `whitening`) that `fit_to_data` computes once from the
  training images; they are in the state dict, never trained and never pruned. Our data sets
  arrive normalised per channel, so the model first undoes that (`pixel_mean`, `pixel_std`
  buffers) to standardise the raw pixels as they did. A training split with fewer usable
  components than 800 (variance above 1e-10 of the largest) keeps as many as it has, and the first
  layer is made that narrow.
- Body. Specified (their 69.6% permutation-invariant CIFAR-10 network): 800 -> 4000 -> 1000 ->
  4000 -> 1000 -> 4000 -> 1000 -> 4000 -> classes. The 4000-wide layers have no bias and a
  rectifier (their zero-bias autoencoders with the threshold at 0 when fine-tuning); the 1000-wide
  layers are linear with no bias; the output layer (logistic regression) is the only one with a
  bias. Their code standardises each sample's activations (row mean, row std + 1e-10) after every
  hidden layer but the last, the linear bottlenecks included; so does this version.
  `depth` (`--fclin_depth`) is the number of 4000-wide layers: 4 by default, 2 for the shorter
  800 -> 4000 -> 1000 -> 4000 -> classes network of their augmented-data run.
- Our choice: the standard deviation is taken of max(variance, 1e-30), so a row that is all zeros
  (a layer pruned away) gives zeros and finite gradients instead of NaN; otherwise it is theirs.
- Initialisation (`--init data`, fclin's default; see `data_init`). Specified: the first layer's
  filters are 0.01 x the first 4000 whitened training images, every other hidden layer 0.01 x
  the whitened training data flattened, tiled and reshaped to (n_in, n_out); the output layer
  uniform in +-4 sqrt(6 / (n_in + classes)). Our choice: the images are taken in a random order
  from the seeded generator instead of file order (the same distribution; `reinit` then draws
  new filters instead of the same ones), and the output bias starts at 0. `--init xavier` or
  `kaiming` instead initialises fclin like every other network.
- Their layer-wise zero-bias autoencoder pre-training (TRec activation, tied decoder) is
  `--pretrain zae` (`pretrain.py`, which lists its own choices). Not built: their
  conjugate-gradient training of the output layer before fine-tuning. Their
  fine-tuning (SGD, momentum 0.9, lr 5e-3, batch 100, dropout 0.1 on every layer's input, the
  learning rate times 0.9 after 5 epochs without improvement) maps onto `--optimizer sgd
  --momentum 0.9 --lr 5e-3 --batch_size 100 --dropout 0.1` except the learning-rate schedule;
  the runner's weight decay (1e-4) stays on.
"""

import math
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

from archs.models import Shape

PCA_COMPONENTS = 800
WIDTH = 4000
BOTTLENECK = 1000
INIT_SCALE = 0.01
STABLE_VARIANCE = 1e-10  # components with less variance than this share of the largest are dropped
FIT_CHUNK = 5000  # images per step when computing the covariance


def standardize_rows(x: Tensor) -> Tensor:
    """Each row minus its mean, divided by its (population) standard deviation + 1e-10."""
    centered = x - x.mean(dim=1, keepdim=True)
    variance = centered.pow(2).mean(dim=1, keepdim=True)
    return centered / (variance.clamp_min(1e-30).sqrt() + 1e-10)


def principal_components(
    chunks: Callable[[], Iterator[Tensor]], mean: Tensor, count: int
) -> tuple[Tensor, Tensor]:
    """Variances (largest first) and unit directions of the data's principal components.

    `chunks()` yields the rows (float64). With fewer rows than dimensions (a tiny split), the
    n x n Gram matrix gives the same components far faster than the d x d covariance.
    """
    if count < mean.numel():
        rows = torch.cat(list(chunks())) - mean
        variances, left = torch.linalg.eigh(rows @ rows.T / count)
        variances, left = variances.flip(0), left.flip(1)
        vectors = rows.T @ left / (variances.clamp_min(1e-300) * count).sqrt()
        return variances, vectors
    covariance = torch.zeros(mean.numel(), mean.numel(), dtype=torch.float64, device=mean.device)
    for rows in chunks():
        centered = rows - mean
        covariance += centered.T @ centered
    variances, vectors = torch.linalg.eigh(covariance / count)
    return variances.flip(0), vectors.flip(1)


class RowStandardize(nn.Module):
    """Parameter-free per-sample standardisation of a layer's activations."""

    def forward(self, x: Tensor) -> Tensor:
        return standardize_rows(x)


class FCLin(nn.Module):
    def __init__(
        self,
        input_shape: Shape,
        num_classes: int,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        depth: int = 4,
        width: int = WIDTH,
        bottleneck: int = BOTTLENECK,
        components: int = PCA_COMPONENTS,
    ) -> None:
        super().__init__()
        channels = input_shape[0]
        inputs = math.prod(input_shape)
        components = min(components, inputs)
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(1, channels, 1, 1))
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(1, channels, 1, 1))
        # Until `fit_to_data`, the "whitening" keeps the first `components` pixels unchanged.
        self.register_buffer("pca_mean", torch.zeros(inputs))
        self.register_buffer("whitening", torch.eye(inputs, components))
        layers: list[nn.Module] = [nn.Linear(components, width, bias=False), nn.ReLU()]
        for _ in range(depth - 1):
            layers += [RowStandardize(), nn.Linear(width, bottleneck, bias=False), RowStandardize()]
            layers += [nn.Linear(bottleneck, width, bias=False), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.classifier = nn.Linear(width, num_classes)

    def standardized_pixels(self, x: Tensor) -> Tensor:
        """(N, C, H, W) normalised images -> (N, C*H*W) raw pixels, each image standardised."""
        pixels = x * self.pixel_std.to(x.device) + self.pixel_mean.to(x.device)
        return standardize_rows(pixels.flatten(1))

    def whiten(self, x: Tensor) -> Tensor:
        return (self.standardized_pixels(x) - self.pca_mean) @ self.whitening

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.body(self.whiten(x)))

    @torch.no_grad()
    def fit_to_data(self, train_images: Tensor) -> None:
        """Fit the PCA whitening to the training images (on their device, in float64)."""
        count = train_images.shape[0]

        def chunks():  # float64 rows a few thousand at a time, not a float64 copy of the split
            for i in range(0, count, FIT_CHUNK):
                yield self.standardized_pixels(train_images[i : i + FIT_CHUNK]).double()

        mean = sum(rows.sum(dim=0) for rows in chunks()) / count
        variances, vectors = principal_components(chunks, mean, count)
        stable = int((variances > variances[0] * STABLE_VARIANCE).sum())
        kept = min(self.whitening.shape[1], stable)
        whitening = vectors[:, :kept] / variances[:kept].sqrt()
        device = self.pca_mean.device
        self.pca_mean = mean.float().to(device)
        self.whitening = whitening.float().to(device)
        first = self.body[0]
        if first.in_features != kept:
            self.body[0] = nn.Linear(kept, first.out_features, bias=False, device=device)

    @torch.no_grad()
    def data_init(self, train_images: Tensor) -> None:
        """The paper's data-based initialisation from whitened training images (see above)."""
        linears = [m for m in self.body if isinstance(m, nn.Linear)]
        first = linears[0]
        first.weight.copy_(INIT_SCALE * self._whitened_sample(train_images, first.out_features))
        for layer in linears[1:]:
            needed = layer.weight.numel()
            images = math.ceil(needed / self.whitening.shape[1])
            values = self._whitened_sample(train_images, images).reshape(-1)[:needed]
            layer.weight.copy_(INIT_SCALE * values.view(layer.in_features, layer.out_features).T)
        out = self.classifier
        bound = 4 * math.sqrt(6 / (out.in_features + out.out_features))
        nn.init.uniform_(out.weight, -bound, bound)
        nn.init.zeros_(out.bias)

    def _whitened_sample(self, train_images: Tensor, count: int) -> Tensor:
        """`count` whitened training images in a random order (repeating only past the split)."""
        available = train_images.shape[0]
        order = torch.cat([torch.randperm(available) for _ in range(math.ceil(count / available))])
        picked = train_images[order[:count].to(train_images.device)]
        return self.whiten(picked.to(self.pca_mean.device))
