# YuNet labels for the staged scene and portrait folders of configs/wild.yaml (training.detector.scenes).
set -e
cd "$(dirname "$0")/../../.."
P=${PYTHON:-.venv/bin/python}
for s in coco128_person rwmfd worksite voc_shwd; do
  $P -m training.detector.scenes --folder runs/data/$s --out runs/detector/labels/$s.json
done
$P -m training.detector.scenes --folder ../shared/data/identity/lfw_few --out runs/detector/labels/lfw_few.json --pad --limit 3000
$P -m training.detector.scenes --folder runs/data/utkface --out runs/detector/labels/utkface.json --pad --limit 3000
