-- Orthanc's index and storage live in their own database of the same PostgreSQL.
CREATE DATABASE orthanc OWNER aegle;
