# YuNet labels for the portrait sets of configs/wild12.yaml and wild13.yaml (training.detector.scenes): CelebA
# train identities and every lfw_few photo, LivePortrait's talking-head frames, and the photos of the first two
# holding a turned face. ~40 min on 2 cores; stage the folders first:
#   python -m training.fetched --set celeba --set liveportrait
set -e
cd "$(dirname "$0")/../../.."
P=${PYTHON:-.venv/bin/python}
L=runs/detector/labels
$P -m training.detector.scenes --folder runs/data/celeba --out $L/celeba.json --pad \
  --celeba-identities ../shared/data/identity/celeba_first10k_identity.txt
$P -m training.detector.scenes --folder ../shared/data/identity/lfw_few --out $L/lfw_few_all.json --pad
$P -m training.detector.scenes --folder runs/data/liveportrait --out $L/liveportrait.json --pad
for s in celeba lfw_few_all; do
  $P -m training.detector.scenes --turned-from $L/$s.json --out $L/${s}_turned.json
done
