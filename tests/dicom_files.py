"""DICOM files as fundus cameras export them (Ophthalmic Photography 8 Bit), written with pydicom,
with a patient in the header that must never be read."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import convert_color_space
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, generate_uid

OPHTHALMIC_PHOTOGRAPHY_8_BIT = "1.2.840.10008.5.1.4.1.1.77.1.5.1"
# What the header says of the patient: none of it may appear in any output.
PATIENT = {"PatientName": "Doe^Jane", "PatientID": "PID-77123-X", "PatientBirthDate": "19610517",
           "InstitutionName": "Eye Clinic Nordwest", "ReferringPhysicianName": "Smith^Alan"}
# The variants tests cover: (photometric interpretation, compressed).
VARIANTS = (("RGB", False), ("YBR_FULL", False), ("YBR_FULL_422", True))


def dicom_bytes(pixels: np.ndarray, photometric: str = "RGB", compressed: bool = False, frames: int = 1,
                bits: int = 8) -> bytes:
    """A DICOM file of ``pixels`` ((H, W, 3) uint8): uncompressed RGB or YBR_FULL, or JPEG baseline
    (YBR_FULL_422, the pixels encoded by Pillow at quality 95)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = OPHTHALMIC_PHOTOGRAPHY_8_BIT
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = JPEGBaseline8Bit if compressed else ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    for keyword, value in PATIENT.items():
        setattr(dataset, keyword, value)
    dataset.SOPClassUID, dataset.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    dataset.Modality = "OP"
    dataset.Rows, dataset.Columns = pixels.shape[:2]
    dataset.SamplesPerPixel, dataset.PhotometricInterpretation, dataset.PlanarConfiguration = 3, photometric, 0
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = bits, bits, bits - 1, 0
    if frames > 1:
        dataset.NumberOfFrames = frames
    if compressed:
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
        dataset.PixelData = encapsulate([buffer.getvalue()])
        dataset["PixelData"].VR = "OB"
    else:
        data = pixels if photometric == "RGB" else convert_color_space(pixels, "RGB", photometric)
        data = np.repeat(data[None], frames, axis=0) if frames > 1 else data
        dataset.PixelData = data.astype(np.uint16 if bits == 16 else np.uint8).tobytes()
    out = io.BytesIO()
    dataset.save_as(out, enforce_file_format=True)
    return out.getvalue()
