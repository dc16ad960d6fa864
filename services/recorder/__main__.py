from services.recorder.service import RecorderService

RecorderService.main()
