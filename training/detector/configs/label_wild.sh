# YuNet labels for the staged scene and portrait folders of configs/wild.yaml (training.detector.scenes).
# ~30 min on 2 cores; stage the folders first with python -m training.fetched (see wild.yaml).
set -e
cd "$(dirname "$0")/../../.."
P=${PYTHON:-.venv/bin/python}
L=runs/detector/labels
for s in coco128_person rwmfd worksite; do
  $P -m training.detector.scenes --folder runs/data/$s --out $L/$s.json
done
$P -m training.detector.scenes --folder ../shared/data/identity/lfw_few --out $L/lfw_few.json --pad --limit 3000
$P -m training.detector.scenes --folder runs/data/utkface --out $L/utkface.json --pad --limit 3000
$P -m training.detector.scenes --folder runs/data/voc_shwd --out $L/voc_shwd.json --limit 1000
